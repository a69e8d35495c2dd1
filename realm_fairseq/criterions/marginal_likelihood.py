"""The marginal likelihood over retrieved blocks that REALM maximises (paper, sections 2.3 and 3.1).

p(y | x) = sum_z p(y | x, z) p(z | x), with p(z | x) the softmax of the retrieval scores over the
candidate blocks (top k and the null document). For masked-LM pre-training y is the set of masked
tokens; the released REALM code marginalises each masked token on its own,
log p(y_j | x) = logsumexp_z [log p(z | x) + log p(y_j | x, z)], while the paper's equation treats the
masked tokens of an example jointly, logsumexp_z [log p(z | x) + sum_j log p(y_j | x, z)]. Both are
computed in log space, so large scores and tiny probabilities neither overflow nor underflow, and both
carry gradient into the retrieval scores (the embedders) and the reader.
"""
import torch


def marginal_log_likelihood(
    retrieval_scores: torch.Tensor, token_log_probs: torch.Tensor, token_mask: torch.Tensor, joint: bool = False
) -> torch.Tensor:
    """Retrieval scores (B, K), log p(y_j | x, z_k) (B, K, M) and a mask of real targets (B, M) ->
    log p(y_j | x) per token (B, M), zero where masked out; with ``joint``, log p(y | x) per example (B,)."""
    log_p_z = torch.log_softmax(retrieval_scores.float(), dim=-1)  # (B, K)
    token_log_probs = token_log_probs.float().masked_fill(~token_mask[:, None, :], 0.0)  # (B, K, M)
    if joint:
        return torch.logsumexp(log_p_z + token_log_probs.sum(-1), dim=-1)  # (B,)
    per_token = torch.logsumexp(log_p_z[:, :, None] + token_log_probs, dim=1)  # (B, M)
    return per_token.masked_fill(~token_mask, 0.0)
