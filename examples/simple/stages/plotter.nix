{ pkgs }:
{
  pname = "plotter";
  version = "1.0";

  inputs = {
    data_csv = "";
    sum = "";
  };

  outputs = {
    plot = "$out/plot.txt";
  };

  runDependencies = [ pkgs.gawk ];

  run = { inputs, outputs, ... }: ''
    read -r total < "${inputs.sum}"
    # One bar of '#' per value, then the total.
    awk -F, -v total="$total" '
      NR == 1 { print "value | bar"; next }
      {
        bar = ""
        for (i = 0; i < $1; i++) bar = bar "#"
        printf "%5d | %s\n", $1, bar
      }
      END { printf "sum = %d\n", total }
    ' "${inputs.data_csv}" > "${outputs.plot}"
  '';
}
