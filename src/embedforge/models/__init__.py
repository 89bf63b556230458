"""Model families: the teacher, and the students trained by the train stage."""

from embedforge.models.encoder import build_encoder

# model.kind -> the function that builds a new student of that family; a family plugs in here.
MODEL_FAMILIES = {"encoder": build_encoder}
