"""Training the student: objectives, learning-rate schedule and the batches it learns from."""
