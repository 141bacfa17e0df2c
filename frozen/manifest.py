# Python frozen into the kernel image as bytecode (x86 native code where @native/@viper).
include("$(MPY_DIR)/extmod/asyncio")
freeze("$(PORT_DIR)/frozen", "main.py")
# The HTTP server: microdot (PyPI, unpacked by deps/fetch.sh beside MicroPython) and the app.
package("microdot", files=("__init__.py", "microdot.py", "cors.py"), base_path="$(MPY_DIR)/../microdot")
package("cllm", base_path="$(PORT_DIR)/frozen")
