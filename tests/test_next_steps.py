"""The final block's advice after a refused run: the command it names is one `searchtune run`
accepts, and that command's gate blesses the same statistics the refusing gate refused."""

import numpy as np
import pytest

from searchtune.cli.main import build_parser
from searchtune.cli.next_steps import next_steps
from searchtune.cli.parameters import given
from searchtune.ml.stats import compute_statistics
from searchtune.params import GateParams
from searchtune.steps.evaluation.gate import decide

REPORT = "/runs/r1/report.html"


def statistics(candidate_noise: float, queries: int = 150, seed: int = 0):
    """Real gate statistics of a simulated test split: the base sees the relevance through more noise."""
    rng = np.random.default_rng(seed)
    query = np.repeat(np.arange(queries), 6)
    label = (rng.random(len(query)) < 0.4).astype(int)
    latent = 1.5 * label + rng.normal(size=len(label))
    scores = {"candidate": latent + candidate_noise * rng.normal(size=len(label)),
              "base": latent + 1.0 * rng.normal(size=len(label))}
    return compute_statistics(query, label, scores, logit_models=set(scores), confidence=0.95, seed=seed,
                              pooled_method="linearized")


def advised_rule(lines: list[str], placeholder_value: str = "") -> GateParams:
    """The gate rule of the `searchtune run ...` command the advice names, parsed by the real CLI."""
    command = lines[-1].split("searchtune run ", 1)[1]  # the line that relaxes the refusing clause
    flags = command.split(" registers")[0].split(" lowers")[0].split(" accepts")[0].split()
    flags = [placeholder_value if f in ("X", "N") else f for f in flags]
    values = given(build_parser().parse_args(["run", *flags]))
    return GateParams(**{k: v for k, v in values.items() if k in GateParams.model_fields})


def test_a_candidate_that_does_not_beat_the_base_is_told_how_to_register_it_anyway():
    stats = statistics(candidate_noise=1.0)  # as good as the base: no clear gain
    refused = decide(stats, GateParams())
    assert not refused.blessed and refused.decided_by == "beats_base"
    lines = next_steps(refused, ".searchtune/registry", "searchtune-relevance", False, None, REPORT)
    assert lines[0].startswith("  next:     the candidate does not clearly beat the untuned base model")
    assert lines[0].endswith(f"the report shows where it wins and loses: {REPORT}")
    assert "searchtune run --data FILE" in lines[1]
    assert lines[2].strip() == "searchtune run --no-require-beat-base registers it anyway"
    assert decide(stats, advised_rule(lines)).blessed  # the advice does what it says


def test_a_candidate_below_the_floor_is_told_which_flag_lowers_it():
    stats = statistics(candidate_noise=0.3)
    refused = decide(stats, GateParams(min_auc=0.999))
    assert refused.decided_by == "min_auc"
    lines = next_steps(refused, ".searchtune/registry", "searchtune-relevance", False, None, REPORT)
    assert "below the floor min_auc 0.999" in lines[0]
    assert lines[2].strip() == "searchtune run --min-auc X lowers the floor"
    assert decide(stats, advised_rule(lines, "0.6")).blessed


def test_too_few_test_queries_are_told_to_bring_more_data_or_accept_fewer():
    stats = statistics(candidate_noise=0.3, queries=20)
    refused = decide(stats, GateParams())
    assert refused.decided_by == "test_split"
    lines = next_steps(refused, ".searchtune/registry", "searchtune-relevance", False, None, REPORT)
    assert "fewer than 30 test queries" in lines[0] and "--data FILE" in lines[1]
    assert advised_rule(lines, "10").min_test_queries == 10


@pytest.mark.parametrize("root", [".searchtune/registry", "gs://bucket/registry/"])
def test_a_promoted_run_is_told_how_to_serve_it(root):
    blessed = decide(statistics(candidate_noise=0.3), GateParams())
    assert blessed.blessed
    (line,) = next_steps(blessed, root, "searchtune-relevance", True, None, REPORT)
    ref = f"{root.rstrip('/')}/searchtune-relevance@production"
    assert line == f"  next:     serve it: searchtune serve --model {ref}  (make serve, for the default registry)"
    args = build_parser().parse_args(line.split("serve it: ")[1].split("  (")[0].split()[1:])
    assert args.model == ref


def test_models_list_on_an_empty_registry_says_how_to_get_a_first_model(tmp_path, capsys):
    from searchtune.cli.main import main

    assert main(["models", "list", "--registry", str(tmp_path / "registry")]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"no models registered in {tmp_path / 'registry'}: `make run` (or `searchtune run --registry ")
    assert "`--no-require-beat-base` registers one it refused" in line
