# producer -> consumer -> plotter (the plotter also reads the producer's data).
{ repx, pkgs, ... }:
repx.mkPipe rec {
  producer = repx.callStage ../stages/producer.nix [ ];

  # Explicit mapping: producer's output "data_csv" feeds consumer's input "input_csv".
  consumer = repx.callStage ../stages/consumer.nix [
    [ producer "data_csv" "input_csv" ]
  ];

  # Implicit mappings: producer's "data_csv" -> input "data_csv",
  # consumer's "sum" -> input "sum".
  plotter = repx.callStage ../stages/plotter.nix [
    producer
    consumer
  ];
}
