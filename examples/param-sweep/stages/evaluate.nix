# Grades one trained model from its metrics. It declares no params, so it runs
# once per distinct upstream train-model job (6 jobs).
{ pkgs }:
{
  pname = "evaluate";
  version = "1.0";

  inputs = {
    metrics = "";
  };

  outputs = {
    evaluation = "$out/evaluation.json";
  };

  runDependencies = [ pkgs.jq ];

  run = { inputs, outputs, ... }: ''
    jq '{
      optimizer,
      learning_rate,
      batch_size,
      final_loss,
      grade: (if .final_loss < 0.001 then "good"
              elif .final_loss < 0.01 then "fair"
              else "poor" end)
    }' "${inputs.metrics}" > "${outputs.evaluation}"
  '';
}
