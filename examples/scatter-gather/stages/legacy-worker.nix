# Scatter-gather in the single-worker form of the Stages reference
# (scatter / worker / gather, no "steps"). Each work item is one chunk; the
# worker squares its index and the gather concatenates the lines in item order.
{ pkgs }:
{
  pname = "legacy-worker";
  version = "1.0";

  params = {
    chunks = 10;
  };

  # --- 1. Scatter ---
  scatter = {
    inputs = {
      data = "";
    };
    outputs = {
      work__items = "$out/work_items.json";
      worker__arg = {
        index = 0;
        chunk_id = "";
      };
    };
    runDependencies = [ pkgs.coreutils pkgs.jq ];
    run = { inputs, outputs, params, ... }: ''
      # One item per chunk, but never more items than lines of data.
      n="${toString params.chunks}"
      lines=$(wc -l < "${inputs.data}")
      if [ "$lines" -lt "$n" ]; then
        n=$lines
      fi
      jq -n --argjson n "$n" '[range($n) | {index: ., chunk_id: "c\(.)"}]' \
        > "${outputs.work__items}"
    '';
  };

  # --- 2. Worker ---
  worker = {
    inputs = {
      # MANDATORY: a JSON file holding this worker's item.
      worker__item = "";
    };
    outputs = {
      result = "$out/partial.txt";
    };
    runDependencies = [ pkgs.jq ];
    run = { inputs, outputs, ... }: ''
      idx=$(jq -r .index "${inputs.worker__item}")
      chunk=$(jq -r .chunk_id "${inputs.worker__item}")
      echo "$chunk: $idx^2 = $((idx * idx))" > "${outputs.result}"
    '';
  };

  # --- 3. Gather ---
  gather = {
    inputs = {
      # MANDATORY: a JSON list of all worker output paths,
      # e.g. [{"result": "/path/to/worker1/partial.txt"}, ...].
      worker__outs = "[]";
    };
    outputs = {
      final = "$out/final.txt";
    };
    runDependencies = [ pkgs.jq pkgs.findutils pkgs.coreutils ];
    run = { inputs, outputs, ... }: ''
      jq -r '.[].result' "${inputs.worker__outs}" | xargs cat > "${outputs.final}"
    '';
  };
}
