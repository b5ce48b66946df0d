"""Perplexity from per-token negative log-likelihoods: an offline `evaluate` metric module.

Load it by path (no Hub access): `evaluate.load("metrics/nll_perplexity")`. Unlike the Hub's "perplexity" metric it
loads no model: pass the token NLLs (in nats) your model already computed, e.g. from `Trainer.predict` logits.
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Perplexity = exp(mean token negative log-likelihood), and the mean NLL itself."
_KWARGS_DESCRIPTION = """
Args:
    nlls (`list` of `float`): negative log-likelihood (nats) of each scored token.
Returns:
    perplexity (`float`): exp of the mean NLL.
    mean_nll (`float`): the mean NLL (nats per token).
    num_tokens (`int`): number of tokens scored.
Example:
    >>> metric = evaluate.load("metrics/nll_perplexity")
    >>> metric.compute(nlls=[1.0, 3.0])["perplexity"]  # exp(2)
    7.38905609893065
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NllPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nlls": datasets.Value("float64")}),
        )

    def _compute(self, nlls):
        if not nlls:
            raise ValueError("nll_perplexity needs at least one token NLL")
        mean = math.fsum(nlls) / len(nlls)
        return {"perplexity": math.exp(mean), "mean_nll": mean, "num_tokens": len(nlls)}
