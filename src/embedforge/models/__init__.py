"""Model families: the teacher, and the students trained by the train stage."""
