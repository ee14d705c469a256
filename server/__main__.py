from server.cli import main

# vLLM's engine core is started with spawn, which re-imports the main module: keep the guard.
if __name__ == "__main__":
    main()
