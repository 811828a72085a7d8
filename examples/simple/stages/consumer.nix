{ pkgs }:
{
  pname = "consumer";
  version = "1.0";

  inputs = {
    input_csv = "";
  };

  outputs = {
    sum = "$out/sum.txt";
  };

  runDependencies = [ pkgs.gawk ];

  run = { inputs, outputs, ... }: ''
    # Skip the header line and add up the first column.
    awk -F, 'NR > 1 { s += $1 } END { print s + 0 }' \
      "${inputs.input_csv}" > "${outputs.sum}"
  '';
}
