import pytest
import torch

from trials import Task, load_task


@pytest.fixture(scope="session")
def digits() -> Task:
    return load_task("digits")


@pytest.fixture(scope="session")
def digits_fp32_accuracy(digits: Task) -> float:
    return digits.evaluate(digits.build_model(), torch.device("cpu"))["accuracy"]
