"""openpi's msgpack-numpy codec, written here, and sessions keyed by id stepping in one forward pass."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import yaml
from test_policy import expert_rollout

from vla.policy import Policy
from vla.policy.msgpack_numpy import WireError, packb, unpackb


def test_arrays_round_trip_in_openpis_layout():
    message = {"actions": np.arange(12, dtype=np.float32).reshape(3, 4), "step": np.int64(7), "ok": True}
    raw = msgpack.unpackb(packb(message))
    assert raw["actions"] == {b"__ndarray__": True, b"data": message["actions"].tobytes(), b"dtype": "<f4",
                              b"shape": [3, 4]}
    back = unpackb(packb(message))
    np.testing.assert_array_equal(back["actions"], message["actions"])
    assert back["step"] == 7 and back["step"].dtype == np.int64 and back["ok"] is True


@pytest.mark.parametrize("array, error", [
    ({b"__ndarray__": True, b"data": b"\0" * 5, b"dtype": "<f4", b"shape": [2]}, "images.cam: 5 bytes of data"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}, "images.cam: dtype object is not numeric"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "nope", b"shape": [0]}, "images.cam: dtype 'nope' is not"),
    ({b"__ndarray__": True, b"data": "text", b"dtype": "|u1", b"shape": [4]}, "images.cam: expected an ndarray"),
])
def test_a_malformed_array_is_refused_naming_where_it_sits(array, error):
    with pytest.raises(WireError, match="^" + error.replace("(", r"\(").replace("[", r"\[")):
        unpackb(msgpack.packb({"images": {"cam": array}}))


def test_object_arrays_are_never_sent():
    with pytest.raises(TypeError, match="unsupported dtype object"):
        packb(np.array([None]))


def test_sessions_step_in_any_subset_and_order_with_their_own_history(tiny_export):
    """Keyed sessions, stepped together in varying groups, equal one policy per session."""
    served = Policy.load(tiny_export)
    episodes = {key: expert_rollout(seed, 4) for seed, key in enumerate(["a", "b", "c"])}
    alone = {key: Policy.load(tiny_export) for key in episodes}
    steps = {key: 0 for key in episodes}
    for group in (["a", "b", "c"], ["c", "a"], ["b"], ["b", "c", "a"], ["a", "c"]):
        chunks = served.act_chunk_sessions(group, [episodes[key][steps[key]] for key in group])
        for key, chunk in zip(group, chunks):
            expected = alone[key].act_chunk_batch([episodes[key][steps[key]]])[0]
            np.testing.assert_allclose(chunk, expected, rtol=1e-5, atol=1e-6)
            steps[key] += 1
    served.end_session("a")  # a new episode for "a" only
    fresh = Policy.load(tiny_export)
    np.testing.assert_allclose(served.act_chunk_sessions(["a"], [episodes["b"][0]])[0],
                               fresh.act_chunk_batch([episodes["b"][0]])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served.act_chunk_sessions(["b"], [episodes["b"][3]])[0],
                               alone["b"].act_chunk_batch([episodes["b"][3]])[0], rtol=1e-5, atol=1e-6)


def test_serve_deploy_config_and_rayservice_agree_and_build(tmp_path):
    from pathlib import Path

    from ray.serve.schema import ServeDeploySchema

    from vla.policy.server import build_app

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "configs/serve/policy.yaml").read_text())
    service = yaml.safe_load((root / "k8s/rayservice-policy.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == config
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "vla.policy.server:build_app"
    build_app(app["args"])  # every argument is a ServeConfig field of the right type
    job_env = yaml.safe_load((root / "k8s/runtime-env.yaml").read_text())
    assert sorted(app["runtime_env"]["pip"]["packages"]) == sorted(job_env["pip"]["packages"])
