from jdnet_plugin.cli.average import main

if __name__ == "__main__":
    raise SystemExit(main())
