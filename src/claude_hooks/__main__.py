from claude_hooks.cli.main import main

main()
