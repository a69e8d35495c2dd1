"""REALM's towers and the ``realm`` fairseq model (paper, sections 3.2 and 3.3).

Models sit above :mod:`realm_fairseq.retrieval`: a model is handed a retriever and searches it; it never
builds one.

- :mod:`.encoder`: the BERT-style text encoder every tower is built on (fairseq's encoder plus segments);
  :mod:`.fast_encoder` its fused forward pass.
- :mod:`.embedder`: Embed_input and Embed_doc, the retriever's towers (pooling, head, projection);
  :mod:`.similarity` which pooling and score weights were trained for.
- :mod:`.reader`: the knowledge-augmented encoder of pre-training (masked-LM head);
  :mod:`.span_reader`: the span reader of open-domain QA.
- :mod:`.config`: ``RealmConfig``, the ``realm`` model's options (and which of them start it from other
  weights, which say how its towers compute).
- :mod:`.realm`: the ``realm`` model and its architectures: ``forward`` retrieves and reads for pre-training,
  ``read`` for open QA (:mod:`.open_qa`: the quantities of the QA loss and the predicted span); the task
  registers the head it reads with.
- :mod:`.loading`: every way to fill a tower and the one reader of our checkpoint layout: resolving a
  config's unset fields from the weights it starts from, filling the model's towers and heads from
  ``--encoder-init``/``--retriever-init``/``--realm-init`` as it is built, embedders on their own for
  embedding a corpus, refresh snapshots; :mod:`.hf_convert` (Hugging Face BERT) and :mod:`.realm_hf`
  (REALM's released checkpoints) convert weights; :mod:`.hf_export` writes a checkpoint's towers back as
  Hugging Face directories (sentence-transformers embedders, transformers BERT readers), and
  :mod:`.st_import` reads embedders with their heads (such an export, or a sentence-transformers model's).

Imports go one way: :mod:`.realm` imports :mod:`.loading`, which imports :mod:`.config` and the towers.
"""
