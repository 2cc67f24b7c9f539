"""From runs to verdicts: seed-paired effects and their CIs (stats, effects), claims and
their verdicts against δ (claims), the robustness of each verdict (robustness), the scale a study
ran at (regime), the sources' own effect sizes (sources), and how numbers and figures are shown
(fmt, plots, frontier_view)."""
