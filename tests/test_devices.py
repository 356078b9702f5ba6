import pytest

from diagnostics.grid import devices
from diagnostics.grid.spec import SpecError


def test_cpu_is_always_available():
    assert devices.available_devices()[0] == "cpu"
    assert devices.resolve("auto") == devices.available_devices()


def test_worker_device_index_round_robins():
    assert [devices.worker_device_index(w, 2) for w in range(5)] == [0, 1, 0, 1, 0]
    assert devices.worker_device_index(3, 0) == 0


def test_threads_per_worker_share_the_cores():
    assert devices.threads_per_worker(2, 16) == 8
    assert devices.threads_per_worker(4, 2) == 1
    assert devices.threads_per_worker(1, 2) == 2


def test_absent_or_unknown_device_is_an_error():
    absent = [d for d in devices.DEVICE_TYPES if not devices.is_available(d)]
    if absent:
        with pytest.raises(SpecError, match=f"requested device {absent[0]} is not available"):
            devices.resolve(absent[0])
    with pytest.raises(SpecError, match="unknown device 'tpu'"):
        devices.resolve("tpu")
