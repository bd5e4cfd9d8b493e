from jdnet_plugin.cli.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
