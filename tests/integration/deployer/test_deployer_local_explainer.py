"""A model server the local runtime starts, as `gallery up` does, explains with the explainer artifact the
deployer hands it: the settings reach `python -m gallery_deployer.modelserver` through its environment,
and its workers spawn from that process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from explain_models import TABLE, explain_body, store, table_classifier, table_explainer

from gallery_common.explain.answer import ExplainAnswer
from gallery_deployer.deployer.controller import explainer_env
from gallery_deployer.runtime.base import RuntimeState, ServerSpec
from gallery_deployer.runtime.local import LocalOptions, LocalRuntime


async def test_a_replica_of_the_local_runtime_explains_with_the_explainer_it_was_given(tmp_path: Path) -> None:
    home = tmp_path / "home"
    onnx = store(home, "why/3/model.onnx", table_classifier())
    explainer = store(home, "why/3/explainer.npz", table_explainer())
    spec = ServerSpec(
        deployment_id="why-v3",
        model="why",
        version=3,
        variant="fp32",
        artifact_uri=onnx.uri,
        artifact_sha256=onnx.sha256,
        intra_op_threads=1,
        env=explainer_env(explainer.ref()),
    )
    deployer_env = {"GALLERY_HOME": str(home), "GALLERY_SERVE_NATS": "false", "GALLERY_API_TOKENS": ""}
    runtime = LocalRuntime(LocalOptions(log_dir=tmp_path / "logs", health_interval_s=0.1), deployer_env)
    try:
        await runtime.apply(spec)
        status = await runtime.wait_ready("why-v3", 60)
        assert status.state is RuntimeState.ready, status.detail
        async with httpx.AsyncClient(timeout=120) as client:
            response = await client.post(
                f"{status.endpoints[0]}/v2/models/why/versions/3/explain", content=explain_body("features", TABLE[:1])
            )
    finally:
        await runtime.close()

    assert response.status_code == 200, response.text
    answer = ExplainAnswer.model_validate_json(response.content)
    assert (answer.model_name, answer.model_version, answer.explainer) == ("why", "3", "shap.KernelExplainer")
    row = answer.explanations[0]
    assert sum(row.attributions) == pytest.approx(row.output - row.base_value, abs=1e-4)
