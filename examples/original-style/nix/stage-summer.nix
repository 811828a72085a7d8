# Sums the y column of the producer's data.csv into sum.txt.
{ pkgs }:
{
  pname = "simple-summer";

  inputs = {
    "input_csv" = "";
  };

  outputs = {
    "result.sum" = "$out/sum.txt";
  };

  runDependencies = [ pkgs.gawk ];

  run =
    { inputs, outputs, ... }:
    ''
      awk -F, 'NR > 1 { total += $2 } END { print total }' \
        "${inputs.input_csv}" > "${outputs."result.sum"}"
    '';
}
