{
  description = "my-lab: a repx lab";
  # [template] `repx init --flake` writes this file with the lab's name in the description
  # [template] and the path of its own repx flake in place of path:/path/to/repx. After
  # [template] `nix flake init -t`, set that url to your repx checkout ("path:/home/me/repx")
  # [template] or a published repx flake. repx init drops these [template] lines.
  # The repx flake: this machine's installed copy (works offline). With internet, a
  # published repx can be used instead, e.g. "github:OWNER/repx".
  inputs.repx.url = "path:/path/to/repx";
  outputs = { self, repx }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      gitHash = self.rev or self.dirtyRev or "dirty";
    in {
      packages = forAllSystems (system:
        let
          # Without nixpkgs: the host package set (needs --impure). With nixpkgs:
          #   pkgs = import nixpkgs { inherit system; overlays = [ repx.overlays.default ]; };
          pkgs = repx.legacyPackages.${system};
          lab = import ./lab.nix { inherit pkgs gitHash; repx-lib = repx.lib; };
        in {
          lab = lab.lab // { inherit (lab) runs; };
          default = lab.lab;
        });
    };
}
