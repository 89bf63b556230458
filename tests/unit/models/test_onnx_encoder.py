import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense

from embedforge.errors import UserError
from embedforge.models.onnx_encoder import OnnxSentenceEncoder, export_cache_dir

SENTENCES = ["A dog runs.", "Three people are sitting on a long wooden bench near the river at dusk.", "Hi"]


def test_onnx_encoder_matches_pytorch_and_reuses_its_export(tiny_teacher):
    model = SentenceTransformer(str(tiny_teacher), device="cpu")
    encoder = OnnxSentenceEncoder(model, fingerprint="f" * 64)
    exported = list(export_cache_dir().glob("ffff*.onnx"))
    assert len(exported) == 1

    ours = encoder.encode(SENTENCES, batch_size=2, normalize_embeddings=True)
    reference = model.encode(SENTENCES, normalize_embeddings=True)
    assert ours.shape == (3, 64)
    np.testing.assert_allclose(ours, reference, atol=1e-4)

    modified = exported[0].stat().st_mtime_ns
    OnnxSentenceEncoder(model, fingerprint="f" * 64)
    assert exported[0].stat().st_mtime_ns == modified


def test_unsupported_module_stack_is_refused_with_advice(tiny_teacher):
    model = SentenceTransformer(str(tiny_teacher), device="cpu")
    dense = Dense(in_features=64, out_features=8)
    stacked = SentenceTransformer(modules=[model[0], model[1], dense], device="cpu")
    with pytest.raises(UserError, match=r"Transformer \+ Pooling \+ Dense.*precompute.backend: torch"):
        OnnxSentenceEncoder(stacked, fingerprint="e" * 64)
