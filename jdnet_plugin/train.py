from jdnet_plugin.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
