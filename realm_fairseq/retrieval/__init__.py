"""Retrieval: the MIPS index of block embeddings (:mod:`.mips`), its versions on disk (:mod:`.versions`)."""
