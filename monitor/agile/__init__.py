"""The agile loop on stored embeddings (``monitor run --embeddings``): find calls by example
(``search``, brute force over the stored matrix: ``index``), list what to review next (``picks``: the
segments a head is least sure of, a stratified sample for precision), write those lists as CSVs and
workbooks whose verdicts feed the results store like the report's (``sheets``), and apply a new head to
every stored embedding of an output folder (``rescore``). Training a head on stored embeddings is
``monitor.train.embedded`` (``data.source: embeddings``)."""
