# Reads both gather outputs and writes a short text report.
{ pkgs }:
{
  pname = "report";
  version = "1.0";

  inputs = {
    total = "";
    listing = "";
  };

  outputs = {
    report = "$out/report.txt";
  };

  runDependencies = [ pkgs.coreutils ];

  run = { inputs, outputs, ... }: ''
    read -r total < "${inputs.total}"
    chunks=$(wc -l < "${inputs.listing}")
    {
      echo "sum over all chunks of x*x + 2*x: $total"
      echo "legacy worker chunks: $chunks"
      cat "${inputs.listing}"
    } > "${outputs.report}"
  '';
}
