"""Usage metering's store, report and event consumer (the gateway counts; the deployer keeps the totals)."""
