"""The official archives of SNLI (zip of jsonl), STS-B (tar.gz of tab-separated csv) and SICK (one tab-separated
txt), rebuilt from a mirror slice in their published formats, for the tests of ``download.source: archive``."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pandas as pd


def snli_zip(path: Path, mirror: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for split, official in [("train", "train"), ("validation", "dev"), ("test", "test")]:
            frame = pd.read_parquet(mirror / "snli" / f"{split}.parquet")
            lines = [
                json.dumps(
                    {"gold_label": r.label, "sentence1": r.premise, "sentence2": r.hypothesis, "pairID": f"p{i}"}
                )
                for i, r in enumerate(frame.itertuples())
            ]
            lines.append(json.dumps({"gold_label": "-", "sentence1": "a", "sentence2": "b", "pairID": "x"}))
            archive.writestr(f"snli_1.0/snli_1.0_{official}.jsonl", "\n".join(lines) + "\n")
    return path


def stsb_tar(path: Path, mirror: Path, corrupt_line: int | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for split, official in [("train", "train"), ("validation", "dev")]:
            frame = pd.read_parquet(mirror / "stsb" / f"{split}.parquet")
            lines = [
                "\t".join([r.genre, r.source, r.year, r.pair_id, f"{r.score:.3f}", r.sentence1, r.sentence2]).encode()
                for r in frame.itertuples()
            ]
            if corrupt_line is not None and split == "validation":
                lines[corrupt_line - 1] = lines[corrupt_line - 1].replace(b"A ", b"\xff\xfe ", 1) + b" caf\xe9"
            payload = b"\n".join(lines) + b"\n"
            member = tarfile.TarInfo(f"stsbenchmark/sts-{official}.csv")
            member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))
    return path


def sick_txt(path: Path, mirror: Path) -> Path:
    frames = [pd.read_parquet(mirror / "sick" / f"{split}.parquet") for split in ("train", "validation")]
    pd.concat(frames).to_csv(path, sep="\t", index=False)
    return path


def official_archives(directory: Path, mirror: Path) -> dict[str, Path]:
    return {
        "snli": snli_zip(directory / "snli_1.0.zip", mirror),
        "stsb": stsb_tar(directory / "Stsbenchmark.tar.gz", mirror),
        "sick": sick_txt(directory / "SICK.txt", mirror),
    }


def archive_overrides(archives: dict[str, Path]) -> list[str]:
    return ["download.source=archive"] + [f"download.datasets.{name}.archive={path}" for name, path in archives.items()]
