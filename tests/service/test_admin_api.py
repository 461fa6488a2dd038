"""The admin API (/v1/admin/...) through a real server: snapshots, rollback, learner, OPE, config, keys."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from service.settings import ConfigError, load_settings
from service.tenants import hash_key

ADMIN_KEY, TENANT_KEY = "admin-secret-key", "tenant-secret-key"


def _traffic(url: str, n: int, headers: dict[str, str] | None = None) -> None:
    prompts = ["Write a Python function that sorts a list.", "A recipe for banana bread, please.",
               "Plan three days in Lisbon.", "Prove that the square root of two is irrational."]  # fmt: skip
    for i in range(n):
        r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=10,
                       json={"model": "auto", "messages": [{"role": "user", "content": prompts[i % 4] + f" ({i})"}]})
        assert r.status_code == 200, r.text
        fb = httpx.post(url + "/v1/feedback", headers=headers, timeout=10,
                        json={"decision_id": r.headers["x-turnout-decision-id"], "rating": "up" if i % 3 else "down"})
        assert fb.status_code == 202, fb.text


def test_snapshots_listed_shown_and_rolled_back_live_at_once(live, runtime):
    _traffic(live, 12)
    first = runtime.router.view.snapshot.version
    assert runtime.cycle.run().version == first + 1  # the learner published one
    listing = httpx.get(live + "/v1/admin/snapshots").json()
    assert listing["live"] == first + 1
    assert [(s["version"], s["live"]) for s in listing["snapshots"]] == [(first + 1, True), (first, False)]
    assert httpx.get(live + "/v1/admin/snapshots", params={"limit": 1}).json()["snapshots"][0]["version"] == first + 1

    shown = httpx.get(live + f"/v1/admin/snapshots/{first + 1}").json()
    assert shown["version"] == first + 1 and shown["live"] and shown["models"] == list(runtime.prior.models)
    assert sum(map(sum, shown["decisions"])) == 12 and len(shown["mean"]) == shown["clusters"]

    back = httpx.post(live + f"/v1/admin/snapshots/{first}/rollback")
    assert back.status_code == 200, back.text
    assert back.json() == {"version": first + 2, "routes_as": first, "parent": first + 1}
    # live in this process at once, with the evidence of the version it routes as
    view = runtime.router.view.snapshot
    assert (view.version, view.reason, view.n) == (first + 2, "rollback", runtime.cycle.current().n)
    assert sum(map(sum, view.decisions)) == 0
    assert httpx.get(live + "/healthz").json()["snapshot_version"] == first + 2

    for path, status in (("/v1/admin/snapshots/99", 404), ("/v1/admin/snapshots", 200)):
        assert httpx.get(live + path).status_code == status
    missing = httpx.post(live + "/v1/admin/snapshots/99/rollback")
    assert missing.status_code == 404 and "v99 does not exist" in missing.json()["error"]["message"]
    assert httpx.get(live + "/v1/admin/snapshots", params={"limit": 0}).json()["error"]["param"] == "limit"


def test_an_unknown_path_names_itself_and_a_version_that_is_no_number_says_so(live):
    word = httpx.get(live + "/v1/admin/snapshots/abc")
    error = word.json()["error"]
    assert word.status_code == 404 and error["type"] == "not_found_error", word.text
    assert "GET /v1/admin/snapshots/abc" in error["message"] and "an integer" in error["message"]
    other = httpx.post(live + "/v1/no/such", json={})
    assert other.status_code == 404 and "POST /v1/no/such" in other.json()["error"]["message"], other.text
    wrong = httpx.get(live + "/v1/admin/learner/cycle")  # a POST route asked with GET: which method to use
    assert wrong.status_code == 405 and "use POST" in wrong.json()["error"]["message"], wrong.text
    assert "POST" in wrong.headers["allow"]


def test_an_admin_url_without_a_scheme_means_http():
    from service.admin_client import AdminClient

    client = AdminClient("localhost:8080/")
    assert client.url == "http://localhost:8080"
    client.close()


def test_judge_and_shadow_reports_answer_with_the_judge_off(live, runtime):
    assert runtime.evaluation is None  # the default: no [judge], no [shadow]
    judge = httpx.get(live + "/v1/admin/judge")
    assert judge.status_code == 200 and judge.json()["enabled"] is False, judge.text
    assert judge.json()["calibration"]["pairs"] == 0  # the store's report: nothing graded here
    shadow = httpx.get(live + "/v1/admin/shadow").json()
    assert shadow == {"enabled": False, "shadow": None, "clusters": []}


def test_learner_status_and_a_cycle_on_demand(live, runtime):
    _traffic(live, 8)
    done = httpx.post(live + "/v1/admin/learner/cycle").json()
    assert done["published"] and done["version"] == runtime.router.view.snapshot.version
    again = httpx.post(live + "/v1/admin/learner/cycle").json()
    assert again == {"version": done["version"], "watermark_ms": done["watermark_ms"], "published": False}
    status = httpx.get(live + "/v1/admin/learner").json()
    assert status["live_version"] == done["version"] and status["watermark_ms"] == done["watermark_ms"]
    seen = status["last_window"]
    assert seen["version"] == done["version"] and seen["decisions"] == 8 and seen["feedback"] == 8
    assert sum(m["decisions"] for m in seen["models"].values()) == 8
    assert status["drift_events"] == [] and status["next_cycle_at_ms"] is None  # the fixture starts no scheduler
    # cycles on demand count in the status like scheduled ones
    assert (status["cycles"], status["idle_cycles"], status["last_cycle_version"]) == (1, 1, done["version"])
    assert status["last_cycle_at_ms"] is not None


def test_ope_of_a_candidate_is_computed_by_the_service(live, runtime):
    _traffic(live, 16)
    runtime.sink.flush()
    r = httpx.post(live + "/v1/admin/ope", json={"cost_weight": 0.0, "min_ess": 0})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["n"] == 16 and {"ips", "snips", "dr", "ess"} <= set(report)
    without = httpx.post(live + "/v1/admin/ope", json={"exclude_models": ["sim-frontier"], "min_ess": 0}).json()
    assert without["n"] == 16 and without["ess"] <= report["ess"] + 1e-9
    for body, needle in (({"cost_weight": -1}, "cost_weight"), ({"exclude_models": ["nosuch"]}, "nosuch"),
                         ({"since_ms": 0, "until_ms": 1}, "no routed decisions"), ({"bogus": 1}, "bogus")):  # fmt: skip
        bad = httpx.post(live + "/v1/admin/ope", json=body)
        assert bad.status_code == 422 and needle in bad.json()["error"]["message"], bad.text


def test_config_is_the_effective_one_without_secrets(live, runtime):
    config = httpx.get(live + "/v1/admin/config").json()
    assert config["storage"]["clickhouse_database"] == runtime.settings.storage.clickhouse_database
    assert config["learner"]["grace_s"] == 0.0 and config["server"]["admin_key_sha256"] == []
    clusters = httpx.get(live + "/v1/admin/clusters").json()
    assert len(clusters) == len(runtime.router.view.snapshot.n) and all(c["examples"] for c in clusters)


def test_openapi_documents_the_admin_routes(live):
    paths = httpx.get(live + "/schema/openapi.json").json()["paths"]
    admin = {p for p in paths if p.startswith("/v1/admin/")}
    assert admin == {"/v1/admin/snapshots", "/v1/admin/snapshots/{version}", "/v1/admin/snapshots/{version}/rollback",
                     "/v1/admin/learner", "/v1/admin/learner/cycle", "/v1/admin/ope", "/v1/admin/config",
                     "/v1/admin/clusters", "/v1/admin/judge", "/v1/admin/shadow"}  # fmt: skip
    body = paths["/v1/admin/ope"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"cost_weight", "exclude_models", "since_ms", "until_ms"} <= set(body["properties"])
    doc = httpx.get(live + "/schema/openapi.json").json()
    listed = paths["/v1/admin/snapshots"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"$ref": "#/components/schemas/SnapshotList"}
    assert {"live", "snapshots"} <= set(doc["components"]["schemas"]["SnapshotList"]["properties"])


@pytest.fixture
def keyed(tmp_path, settings, embedder):
    """A service with a tenant key and an admin key, and a model key variable set."""
    from service.runtime import Runtime
    from tests.servers import serve

    toml = tmp_path / "keys.toml"
    toml.write_text(f'[server]\nadmin_key_sha256 = ["{hash_key(ADMIN_KEY)}"]\n\n'
                    f'[[tenants]]\nname = "acme"\napi_key_sha256 = ["{hash_key(TENANT_KEY)}"]\n')  # fmt: skip
    keys = load_settings(toml, {})
    s = msgspec.structs.replace(settings, server=keys.server, tenants=keys.tenants)
    rt = Runtime(s, embedder=embedder, sim_latency_scale=0.0)
    try:
        with serve(rt.app) as url:
            yield url
    finally:
        rt.stop()


@pytest.mark.parametrize("path", ["/v1/admin/snapshots", "/v1/admin/learner", "/v1/admin/config", "/v1/admin/clusters"])
def test_only_the_admin_key_opens_the_admin_api(keyed, path):
    assert httpx.get(keyed + path).status_code == 401
    assert httpx.get(keyed + path, headers={"authorization": "Bearer wrong"}).status_code == 401
    tenant = httpx.get(keyed + path, headers={"authorization": f"Bearer {TENANT_KEY}"})
    assert tenant.status_code == 403 and "tenant" in tenant.json()["error"]["message"]
    assert httpx.get(keyed + path, headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    # and the admin key is no tenant key
    assert httpx.get(keyed + "/v1/models", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 401


def test_a_tenant_key_never_rolls_back(keyed):
    r = httpx.post(keyed + "/v1/admin/snapshots/1/rollback", headers={"authorization": f"Bearer {TENANT_KEY}"})
    assert r.status_code == 403
    assert httpx.post(keyed + "/v1/admin/learner/cycle", headers={"authorization": f"Bearer {TENANT_KEY}"}).status_code == 403


def test_config_redacts_every_secret(keyed):
    config = httpx.get(keyed + "/v1/admin/config", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert hash_key(ADMIN_KEY) not in config and hash_key(TENANT_KEY) not in config
    assert ADMIN_KEY not in config and TENANT_KEY not in config and "<redacted> (1 keys)" in config


def test_with_tenant_keys_and_no_admin_key_the_admin_api_is_closed():
    from service.tenants import AdminGate

    gate = AdminGate((), [hash_key(TENANT_KEY)])
    for header in (None, f"Bearer {TENANT_KEY}", f"Bearer {ADMIN_KEY}"):
        with pytest.raises(Exception) as err:
            gate.check(header)
        assert err.value.status == 403
    assert AdminGate((), ()).check(None) == ""  # no keys anywhere: open, as the rest of the service


def test_effective_config_redacts_dsn_passwords_and_key_values():
    from service.config_view import effective_config

    s = load_settings(None, {"TURNOUT_STORAGE__CLICKHOUSE_DSN": "http://turnout:s3cret@ch:8123"})
    s = msgspec.structs.replace(s, models=load_settings(None, {}).models)
    shown = effective_config(s, {})
    assert shown["storage"]["clickhouse_dsn"] == "http://turnout:<redacted>@ch:8123"
    from service.settings import ModelSettings

    s = msgspec.structs.replace(s, models=(ModelSettings(name="m", base_url="http://x", api_key_env="TT_KEY"),))
    shown = effective_config(s, {"TT_KEY": "sk-live-value"})
    assert shown["models"][0]["api_key_env"] == "TT_KEY" and shown["models"][0]["api_key_set"] is True
    assert "sk-live-value" not in msgspec.json.encode(shown).decode()


@pytest.mark.parametrize(
    "value,needle",
    [('["not-a-digest"]', "lowercase SHA-256 hex"), (f'["{hash_key(TENANT_KEY)}"]', "tenant's api key")],
)
def test_admin_key_setting_is_checked(tmp_path, value, needle):
    path = tmp_path / "turnout.toml"
    path.write_text(f"[server]\nadmin_key_sha256 = {value}\n\n"
                    f'[[tenants]]\nname = "acme"\napi_key_sha256 = ["{hash_key(TENANT_KEY)}"]\n')  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert "server.admin_key_sha256" in str(err.value) and needle in str(err.value)
