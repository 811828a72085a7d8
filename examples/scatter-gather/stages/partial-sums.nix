# Scatter-gather with a step mini-DAG per work item (branch):
#
#   worker__item --+--> square --+
#                  |             +--> combine  (the single sink; its one output
#                  +--> double --+               "partial" is what gather receives)
#
# Branch i takes the (i+1)-th number x of the data file and computes
# x*x + 2*x; gather adds up the branches. With the numbers 1..10 and 10 chunks
# the total is 385 + 110 = 495.
#
# The root steps also declare the input "data": no step provides it, so it is
# filled from the stage's own input of the same name (the scatter's "data").
{ pkgs }:
let
  square = {
    pname = "square";
    inputs = {
      worker__item = "";
      data = "";
    };
    outputs = {
      sq = "$out/square.txt";
    };
    deps = [ ];
    runDependencies = [ pkgs.coreutils pkgs.jq pkgs.gnused ];
    resources = {
      mem = "256M";
      cpus = 1;
      time = "00:01:00";
    };
    run = { inputs, outputs, ... }: ''
      index=$(jq -r '.index' "${inputs.worker__item}")
      x=$(sed -n "$((index + 1))p" "${inputs.data}")
      x=$((x + 0))
      echo "$((x * x))" > "${outputs.sq}"
    '';
  };

  double = {
    pname = "double";
    inputs = {
      worker__item = "";
      data = "";
    };
    outputs = {
      dbl = "$out/double.txt";
    };
    deps = [ ];
    runDependencies = [ pkgs.coreutils pkgs.jq pkgs.gnused ];
    run = { inputs, outputs, ... }: ''
      index=$(jq -r '.index' "${inputs.worker__item}")
      x=$(sed -n "$((index + 1))p" "${inputs.data}")
      x=$((x + 0))
      echo "$((2 * x))" > "${outputs.dbl}"
    '';
  };

  combine = {
    pname = "combine";
    inputs = {
      squared = "";
      doubled = "";
    };
    outputs = {
      partial = "$out/partial.txt";
    };
    # Explicit step mappings: [ step "source_output" "target_input" ].
    deps = [
      [ square "sq" "squared" ]
      [ double "dbl" "doubled" ]
    ];
    runDependencies = [ pkgs.coreutils ];
    run = { inputs, outputs, ... }: ''
      read -r sq < "${inputs.squared}"
      read -r dbl < "${inputs.doubled}"
      echo "$((sq + dbl))" > "${outputs.partial}"
    '';
  };
in
{
  pname = "partial-sums";
  version = "1.0";

  # Parameters applicable to the whole group.
  params = {
    chunks = 10;
  };

  resources = {
    mem = "512M";
    cpus = 1;
    time = "00:05:00";
  };

  scatter = {
    inputs = {
      data = "";
    };
    outputs = {
      # MANDATORY: the JSON file holding the list of work items.
      work__items = "$out/work_items.json";
      # MANDATORY: the shape of one work item.
      worker__arg = {
        index = 0;
        chunk_id = "";
      };
    };
    runDependencies = [ pkgs.coreutils pkgs.jq ];
    run = { inputs, outputs, params, ... }: ''
      chunks="${toString params.chunks}"
      lines=$(wc -l < "${inputs.data}")
      if [ "$lines" -lt "$chunks" ]; then
        echo "data has $lines lines, fewer than $chunks chunks" >&2
        exit 1
      fi
      jq -n --argjson n "$chunks" \
        '[range($n) | {index: ., chunk_id: "c\(.)"}]' > "${outputs.work__items}"
    '';
  };

  steps = {
    inherit square double combine;
  };

  gather = {
    inputs = {
      # MANDATORY: a JSON list with one object per branch, keyed by the sink's
      # output name, e.g. [{"partial": "/.../partial.txt"}, ...].
      worker__outs = "[]";
    };
    outputs = {
      total = "$out/total.txt";
    };
    runDependencies = [ pkgs.coreutils pkgs.jq ];
    run = { inputs, outputs, ... }: ''
      total=0
      branches=0
      while read -r partial_file; do
        read -r value < "$partial_file"
        total=$((total + value))
        branches=$((branches + 1))
      done < <(jq -r '.[].partial' "${inputs.worker__outs}")
      echo "gathered $branches branches" >&2
      echo "$total" > "${outputs.total}"
    '';
  };
}
