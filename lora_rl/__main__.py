from lora_rl.cli import main

main()
