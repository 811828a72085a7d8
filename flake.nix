# The repx flake. A lab's flake takes it as an input and uses:
#   repx.lib                       the library labs call (repx-lib.mkLab, callRun, utils, ...);
#                                  it takes `pkgs` from mkLab's argument, so any package set
#                                  (nixpkgs, an overlay, the host set) reaches the stages
#   repx.overlays.default          adds pkgs.repx (the CLI and the Python package) and
#                                  pkgs.repx-py / ps.repx-py (repx_py, repx.analysis)
#   repx.legacyPackages.<system>   the host package set, for machines without nixpkgs; it
#                                  reads the host's /usr/bin, so it needs --impure
#   repx.packages.<system>.default repx itself, built with the host package set (--impure)
#   repx.templates.default         what `repx init --flake` writes
# The flake has no inputs: nothing is fetched, and pure evaluation needs no
# builtins.currentSystem because every package set names its system.
{
  description = "repx: reproducible, incremental computational experiments described in Nix";

  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f:
        builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      overlay = final: prev: {
        repx = import ./nix/package.nix { pkgs = final; src = self; };
        # repx_py and repx.analysis alone (standard library only), for analysis stages:
        # pkgs.repx-py, and ps.repx-py (ps.repx_py) in every python3.withPackages.
        repx-py = import ./nix/repx-py.nix { pkgs = final; src = self; };
        pythonPackagesExtensions = (prev.pythonPackagesExtensions or [ ]) ++ [
          (pyFinal: _: {
            repx-py = import ./nix/repx-py.nix { pkgs = final; src = self; python3 = pyFinal.python; };
            repx_py = pyFinal.repx-py;
          })
        ];
      };
      # The host package set with the overlay applied (a fixed point, as nixpkgs does).
      hostPackages = system:
        let
          base = import ./nix/pkgs { inherit system; };
          final = base // overlay final base;
        in
        final;
    in
    {
      lib = import ./nix/lib;
      overlays.default = overlay;
      legacyPackages = forAllSystems hostPackages;
      packages = forAllSystems (system: {
        repx = (hostPackages system).repx;
        default = (hostPackages system).repx;
      });
      templates.default = {
        path = ./nix/templates/default;
        description = "A repx lab: lab.nix, a run, a pipeline and its stages, built through a flake";
      };
    };
}
