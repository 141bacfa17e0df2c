# Python frozen into the kernel image as bytecode (x86 native code where @native/@viper).
include("$(MPY_DIR)/extmod/asyncio")
freeze("$(PORT_DIR)/frozen", "main.py")
