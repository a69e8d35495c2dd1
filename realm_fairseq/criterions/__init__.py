"""fairseq criterions of the plugin: losses and metrics from what the ``realm`` model returns.

- :mod:`.realm_ict`: ``realm_ict``, the in-batch softmax of ICT (REALM section 3.4), gathered over ranks.
- :mod:`.realm_mlm`: ``realm_mlm``, the marginal likelihood of the masked tokens (sections 2.3-3.1), the
  retriever's warm-up, retrieval utility and index staleness; :mod:`.marginal_likelihood` the marginal.
- :mod:`.realm_qa`: ``realm_qa``, open-QA fine-tuning's reader and retriever losses (section 3.3), EM and
  recall@k (:mod:`realm_fairseq.data.qa_metrics`).
"""
