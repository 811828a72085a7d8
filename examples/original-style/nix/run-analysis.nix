_: {
  name = "analysis-run";

  pipelines = [
    ./pipe-analysis.nix
  ];

  parameters = { };
}
