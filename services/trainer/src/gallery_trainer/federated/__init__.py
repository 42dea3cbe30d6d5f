"""Federated training (`engine.kind: federated`): sites that keep their data train one model with Flower.

In the trainer's interpreter: `coordinator` (the job: plan, follow the rounds, export), `site` (a site's
process: its data and local training), `partition` (non-IID demo folders). In Flower's own interpreter
(`.venv-flower`, see `relay`): `flower_server` (the rounds, aggregation, SecAgg+ through `secure`, DP with
`privacy`) and `flower_client` (a site's Flower connection). `relay`, `plan`, `privacy` and `secure` are
the pieces both sides read; nothing here imports torch at package import.
"""
