"""The loop's model used without training: embeddings of token rows, and the objective's mean over batches.

Validators and epoch hooks call these between epochs; each leaves the model in the mode it found it in.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from embedforge.training.batches import LengthBucketedBatches, TokenBatch
from embedforge.training.hooks import Loop

EVAL_BATCH_SIZE = 256


@torch.no_grad()
def embed_rows(loop: Loop, rows: np.ndarray) -> np.ndarray:
    """Eval-mode embeddings of TokenStore rows, shortest first in batches, returned in the given order."""
    was_training = loop.model.training
    loop.model.eval()
    store = loop.batches.store
    order = np.argsort(store.lengths[rows], kind="stable")
    out = np.empty((len(rows), 0), dtype=np.float32)
    chunks = []
    for start in range(0, len(order), EVAL_BATCH_SIZE):
        chosen = rows[order[start : start + EVAL_BATCH_SIZE]]
        input_ids, attention_mask = store.padded(chosen, loop.batches.pad_id)
        with loop.autocast():
            embedded = loop.features(TokenBatch(input_ids, attention_mask, [], chosen))["sentence_embedding"]
            chunks.append(embedded.float().cpu().numpy())
    if chunks:
        out = np.empty((len(rows), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)
    loop.model.train(was_training)
    return out


@torch.no_grad()
def mean_loss(loop: Loop, batches: LengthBucketedBatches) -> float:
    """The objective averaged over ``batches`` (epoch 0's fixed plan), without dropout."""
    was_training = loop.model.training
    loop.model.eval()
    total = weight = 0.0
    for batch in batches.epoch(0):
        loss, _ = loop.loss(batch)
        total += batch.num_examples * loss.item()
        weight += batch.num_examples
    loop.model.train(was_training)
    return total / weight if weight else math.nan
