"""The embedded gateway's TLS listener: paho devices over TLS with a CA the test makes (openssl CLI), a device
that does not trust that CA is refused, and a bad certificate file is a one-line configuration error."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetops.errors import ConfigurationError
from fleetops.messaging.embedded import EmbeddedBroker, TlsListener
from tests.mqtt_support import EchoShadowHandler, MemoryDirectory, PahoDevice, random_product_id
from tests.support import make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and a second CA nobody uses."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def devices() -> Iterator[list[PahoDevice]]:
    started: list[PahoDevice] = []
    yield started
    for device in started:
        device.close()


async def test_devices_connect_over_tls_and_an_untrusting_one_is_refused(
    pki: dict[str, Path], devices: list[PahoDevice]
) -> None:
    pid, directory = random_product_id(), MemoryDirectory()
    credentials = directory.add(pid, "secure")
    service = EmbeddedBroker(
        directory, EchoShadowHandler(), port=0, tls=TlsListener(0, pki["server.pem"], pki["server.key"])
    )
    await service.start()
    try:
        assert service.tls_port is not None and service.tls_port != service.port
        device = PahoDevice(credentials, tls_ca=pki["ca.pem"])
        devices.append(device)
        assert await device.connect(service.tls_port) == 0
        assert await device.subscribe(f"{pid}/secure/control", 1) == 1
        await service.publisher.publish(f"{pid}/secure/control", b"over tls", 1)
        assert (await device.receive()).payload == b"over tls"

        stranger = PahoDevice(directory.add(pid, "stranger"), tls_ca=pki["other.pem"])
        with pytest.raises(ssl.SSLCertVerificationError):
            await stranger.connect(service.tls_port)
        plain = PahoDevice(directory.add(pid, "plain"))  # the plain listener still works beside it
        devices.append(plain)
        assert await plain.connect(service.port) == 0
        assert service.publisher.online(pid, "secure") is True
    finally:
        await service.stop()


async def test_a_bad_certificate_file_is_a_configuration_error(tmp_path: Path, pki: dict[str, Path]) -> None:
    missing = tmp_path / "missing.pem"
    service = EmbeddedBroker(MemoryDirectory(), EchoShadowHandler(), port=0, tls=TlsListener(0, missing, missing))
    with pytest.raises(ConfigurationError, match="cannot load the MQTT TLS certificate"):
        await service.start()
    assert service.broker is None
    wrong_key = TlsListener(0, pki["server.pem"], pki["other.key"])
    with pytest.raises(ConfigurationError, match="FLEETOPS_MQTT_TLS_CERT_FILE"):
        await EmbeddedBroker(MemoryDirectory(), EchoShadowHandler(), port=0, tls=wrong_key).start()
