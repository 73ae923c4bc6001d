"""The run stage: execute a mapping (build, load, chunked runs, reconciliation) into a site database."""
