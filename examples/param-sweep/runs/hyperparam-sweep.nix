# Dot notation targets one stage's param by the stage's pname ("train-model"),
# not by its attribute name in the pipeline ("train").
# Cartesian product: 3 learning rates x 2 optimizers = 6 combinations.
{ pkgs, repx-lib, ... }:
{
  name = "hyperparam-sweep";
  pipelines = [ ../pipelines/train.nix ];
  params = {
    "train-model.learning_rate" = [ 0.1 0.01 0.001 ];
    "train-model.optimizer" = [ "adam" "sgd" ];
  };
}
