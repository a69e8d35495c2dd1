"""fairseq tasks of the plugin; each reads its data and tells the ``realm`` model which head to grow.

- :mod:`.base`: what the three share: the CORPUS and its dictionary, the train/valid split of its blocks,
  building the model and registering its head.
- :mod:`.realm_ict`: ``realm_ict``, Inverse Cloze Task pre-training of the retriever (REALM section 3.4).
- :mod:`.realm_pretrain`: ``realm_pretrain``, retrieval-augmented masked-LM pre-training with the index
  refreshed in the background (sections 2-3); registers the knowledge-augmented encoder.
- :mod:`.realm_open_qa`: ``realm_open_qa``, open-domain QA fine-tuning over a fixed index (section 3.3);
  registers the span reader.
"""
