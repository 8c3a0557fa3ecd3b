import pytest
from siren_testing import make_model

from siren_lightning.models.siren import SirenLM


@pytest.fixture
def model() -> SirenLM:
    return make_model()
