"""realm-fairseq: REALM (Guu et al. 2020, "REALM: Retrieval-Augmented Language Model Pre-Training")
as a fairseq plugin.

Importing this package makes fairseq checkpoints loadable on torch >= 2.6 and registers every task,
model and criterion of the plugin. fairseq's ``--user-dir`` auto-imports only ``tasks/`` and
``models/`` of a plugin, and nothing at all when the package was already imported by a wrapper such as
``realm-train``, so every registering module must be imported here.
"""
from realm_fairseq import checkpoint_compat

checkpoint_compat.allow_fairseq_checkpoints()

from realm_fairseq.models import realm  # noqa: E402,F401  (registers the model and architectures)

__version__ = "0.1.0"
