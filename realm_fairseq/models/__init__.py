"""REALM's towers: the text encoder, the retriever's embedders and the `realm` fairseq model."""
