from claude_hooks.cli import main

main()
