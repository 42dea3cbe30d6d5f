"""Service discovery through `modelgallery.services` entry points, and the `serve` runner's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gallery_common import serve
from gallery_common.service import ServiceSpec, ServiceSpecError, discover_services, find_service, service_names


def install(site: Path, dist: str, entry_points: dict[str, str], module_source: str = "") -> None:
    """A minimal installed distribution: a module plus a dist-info advertising entry points."""
    if module_source:
        (site / f"{dist}.py").write_text(module_source)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[modelgallery.services]\n{lines}")


TWO_SERVICES = """
from gallery_common.service import ServiceSpec

DEPLOYER = ServiceSpec(name="zz-deployer", port=61004, app_factory="fake_two:make_deployer")
GATEWAY = ServiceSpec(name="zz-gateway", port=61000, app_factory="fake_two:make_gateway")
NOT_A_SPEC = {"name": "zz-bad"}
SAME_PORT = ServiceSpec(name="zz-clash", port=61004, app_factory="fake_two:make_gateway")


def make_deployer():
    return "deployer app"


def make_gateway():
    return "gateway app"
"""


@pytest.fixture(autouse=True)
def _restore_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # serve.main() fills in GALLERY_SERVICE_NAME; keep that from leaking into other tests.
    monkeypatch.setenv("GALLERY_SERVICE_NAME", "zz-test")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_one_package_may_advertise_two_services_sorted_by_port(site: Path) -> None:
    install(site, "fake_two", {"zz-deployer": "fake_two:DEPLOYER", "zz-gateway": "fake_two:GATEWAY"}, TWO_SERVICES)
    ours = [s for s in discover_services() if s.name.startswith("zz-")]
    assert [(s.name, s.port) for s in ours] == [("zz-gateway", 61000), ("zz-deployer", 61004)]
    assert {"zz-deployer", "zz-gateway"} <= set(service_names())


def test_find_service_builds_the_app_through_its_factory(site: Path) -> None:
    install(site, "fake_two", {"zz-deployer": "fake_two:DEPLOYER"}, TWO_SERVICES)
    spec = find_service("zz-deployer")
    assert spec == ServiceSpec(name="zz-deployer", port=61004, app_factory="fake_two:make_deployer")
    assert spec.create_app() == "deployer app"
    assert find_service("zz-missing") is None


@pytest.mark.parametrize(
    ("entry_points", "message"),
    [
        ({"zz-bad": "fake_two:NOT_A_SPEC"}, "is a dict, not a ServiceSpec"),
        ({"zz-other": "fake_two:GATEWAY"}, "named 'zz-gateway'; the names must match"),
        ({"zz-gone": "fake_two_missing:SERVICE"}, "cannot be loaded: ModuleNotFoundError"),
        ({"zz-deployer": "fake_two:DEPLOYER", "zz-clash": "fake_two:SAME_PORT"}, "both want port 61004"),
    ],
)
def test_a_broken_advertisement_is_named_not_skipped(site: Path, entry_points: dict[str, str], message: str) -> None:
    install(site, "fake_two", entry_points, TWO_SERVICES)
    with pytest.raises(ServiceSpecError, match=message):
        discover_services()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Registry", "port": 8001, "app_factory": "m:f"}, "lowercase"),
        ({"name": "registry", "port": 70000, "app_factory": "m:f"}, "not a TCP port"),
        ({"name": "registry", "port": 8001, "app_factory": "m.f"}, "not 'module:function'"),
    ],
)
def test_service_spec_validates_itself(fields: dict, message: str) -> None:
    with pytest.raises(ServiceSpecError, match=message):
        ServiceSpec(**fields)


def test_serve_refuses_an_unknown_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(["zz-nowhere"]) == 2
    assert "no service named 'zz-nowhere' is installed" in capsys.readouterr().err


def test_serve_reports_invalid_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GALLERY_NATS_URL", "http://not-nats")
    assert serve.main(["zz-nowhere"]) == 2
    assert capsys.readouterr().err.strip() == "invalid setting GALLERY_NATS_URL: not a NATS URL: 'http://not-nats'"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("gallery.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert serve.is_loopback(host) is loopback
