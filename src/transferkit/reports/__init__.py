"""Reports a person reads: the comparison report (HTML) and the federated report."""
