import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Derandomized for CI; `dev` is quick; `long` is for release checks (HYPOTHESIS_PROFILE=long).
settings.register_profile("ci", derandomize=True, max_examples=70, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=20, deadline=None)
# per mutant of the tool's mutation run (proofs/mutation_tool.py): the @examples plus a few draws
settings.register_profile("mutation", derandomize=True, max_examples=5, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
