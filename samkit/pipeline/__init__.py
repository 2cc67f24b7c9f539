"""The DVC pipeline and the book: params.yaml validated (params, yaml_checks), one study run
end to end (study), one DVC stage that never loses a published result (stage, backup, signals),
its saved outputs (results), the front page (frontpage), and the files derived from the registry
(sync)."""
