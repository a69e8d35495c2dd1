"""realm-fairseq: REALM (Guu et al. 2020, "REALM: Retrieval-Augmented Language Model Pre-Training")
as a fairseq plugin.

Importing this package makes fairseq write checkpoints by rename, load them with ``weights_only=True`` and
resume from the newest intact one (:mod:`realm_fairseq.checkpoint_compat`), and registers every task,
model, criterion and optimizer of the plugin. fairseq's ``--user-dir`` auto-imports only ``tasks/`` and
``models/`` of a plugin, and nothing at all when the package was already imported by a wrapper such as
``realm-train``, so every registering module must be imported here.
"""
import logging

# importing fairseq and faiss logs how faiss picked its instruction set and that tensorboardX is missing,
# before any command has set up logging; none of it is news to a user
for _name in ("faiss.loader", "fairseq.tasks.text_to_speech"):
    logging.getLogger(_name).setLevel(logging.WARNING)

from realm_fairseq import checkpoint_compat  # noqa: E402

checkpoint_compat.install()

# every module that registers something with fairseq (see the module docstring)
from realm_fairseq.criterions import realm_ict as _realm_ict_criterion  # noqa: E402,F401
from realm_fairseq.criterions import realm_mlm as _realm_mlm_criterion  # noqa: E402,F401
from realm_fairseq.criterions import realm_qa as _realm_qa_criterion  # noqa: E402,F401
from realm_fairseq.models import realm as _realm_model  # noqa: E402,F401
from realm_fairseq.optim import realm_adam as _realm_adam  # noqa: E402,F401
from realm_fairseq.tasks import realm_ict as _realm_ict_task  # noqa: E402,F401
from realm_fairseq.tasks import realm_open_qa as _realm_open_qa_task  # noqa: E402,F401
from realm_fairseq.tasks import realm_pretrain as _realm_pretrain_task  # noqa: E402,F401

__version__ = "0.1.0"
