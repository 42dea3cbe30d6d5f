"""The deployer service: reacts to lifecycle events, runs model servers and moves gateway traffic."""
