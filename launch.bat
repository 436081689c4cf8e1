@echo off
rem Atelier launcher for Windows: the same steps as launch.sh, in cmd syntax.
rem
rem   launch.bat [app flags]          set up .venv when needed, then run app.py with the flags
rem   launch.bat --exit               set up only
rem   launch.bat --test [pytest args] set up (plus test requirements), then run the test suite
rem   launch.bat --help               launcher flags, then app.py's flags
rem
rem Environment: ATELIER_PYTHON (interpreter used to create .venv), TORCH_COMMAND (replaces the torch and
rem torchvision install, as in A1111), ATELIER_TORCH_CUDA (CUDA wheel tag, default below).
setlocal EnableExtensions EnableDelayedExpansion

rem The torch and torchvision pins, a pair: the same as launch.sh's TORCH_VERSION and TORCHVISION_VERSION lines
rem (a test checks both agree); spandrel (upscaler models) needs a torchvision built for this torch.
set "TORCH_VERSION=2.14.1"
set "TORCHVISION_VERSION=0.29.1"
set "TORCH_CUDA_DEFAULT=cu128"
set "TORCH_INDEX=https://download.pytorch.org/whl"

set "ROOT=%~dp0"
if "%ROOT:~-1%"=="\" set "ROOT=%ROOT:~0,-1%"
set "VENV=%ROOT%\.venv"
set "VENV_PY=%VENV%\Scripts\python.exe"
set "STAMP=%VENV%\atelier-stamp"
set "CONSTRAINTS=%VENV%\atelier-constraints.txt"
set "LOG=%VENV%\atelier-install.log"

rem --- arguments ---------------------------------------------------------------------------------------------
set "MODE=run"
set "ARGS="
:parse
if "%~1"=="" goto parsed
if "%MODE%"=="run" if "%~1"=="--test" (set "MODE=test" & shift & goto parse)
if "%MODE%"=="run" if "%~1"=="--exit" (set "MODE=exit" & shift & goto parse)
if "%MODE%"=="run" if "%~1"=="--help" (set "MODE=help" & shift & goto parse)
if "%MODE%"=="run" if "%~1"=="-h" (set "MODE=help" & shift & goto parse)
set ARGS=!ARGS! %1
shift
goto parse
:parsed

cd /d "%ROOT%" || (call :fail "cannot enter %ROOT%." & exit /b 1)

if "%MODE%"=="help" (
    echo Usage: launch.bat [launcher flags] [app flags]
    echo.
    echo Launcher flags:
    echo   --exit            set up .venv ^(Python, torch, requirements^) and exit without starting the server
    echo   --test [ARGS]     set up, install test requirements, run the test suite; ARGS go to pytest
    echo   --test --long     also run the slow suites ^(long fuzz, soak^) that CI skips
    echo   -h, --help        show this help and app.py's flags
    echo.
    echo Environment: ATELIER_PYTHON, TORCH_COMMAND, ATELIER_TORCH_CUDA ^(see launch.sh^)
    echo.
    echo All other flags go to app.py:
    if exist "%VENV_PY%" (set "HELP_PY=%VENV_PY%") else (call :find_python || exit /b 1 & set "HELP_PY=!PY!")
    "!HELP_PY!" "%ROOT%\app.py" --help
    exit /b !errorlevel!
)

rem --- python ------------------------------------------------------------------------------------------------
if exist "%VENV_PY%" (
    call :python_ok "%VENV_PY%" || (
        echo Atelier: .venv does not work ^(its Python moved or changed version^): recreating it.
        rmdir /s /q "%VENV%"
    )
)
if not exist "%VENV_PY%" (
    call :find_python || exit /b 1
    echo Atelier: creating .venv with !PY!
    !PY! -m venv "%VENV%" || (call :fail "could not create .venv: reinstall Python 3.11 from python.org with pip and venv, and check free disk space." & exit /b 1)
)

rem --- installs ----------------------------------------------------------------------------------------------
echo --- %DATE% %TIME% launch.bat %* >> "%LOG%" || (call :fail "cannot write to .venv: check free disk space and permissions." & exit /b 1)
set "INSTALLED=0"
call :install_torch || exit /b 1
call :install_requirements requirements requirements.txt || exit /b 1
call :check_upscalers
call :install_xformers

if "%MODE%"=="exit" (
    echo Atelier: set-up done ^(.venv ready^); start with launch.bat
    exit /b 0
)
if "%MODE%"=="test" (
    call :install_requirements test-requirements requirements-test.txt || exit /b 1
    call :install_requirements pool-requirements requirements-pool.txt || exit /b 1
    set "HF_HUB_OFFLINE=1"
    echo Atelier: running the tests: python -m pytest!ARGS!
    "%VENV_PY%" -m pytest !ARGS!
    exit /b !errorlevel!
)
echo !ARGS! | findstr /C:"--pool" >nul && (call :install_requirements pool-requirements requirements-pool.txt || exit /b 1)
"%VENV_PY%" "%ROOT%\app.py" !ARGS!
exit /b !errorlevel!

rem --- functions ---------------------------------------------------------------------------------------------
:fail
echo Atelier: ERROR: %~1 1>&2
exit /b 1

:python_ok
%~1 -c "import sys, venv; v = sys.version_info[:2]; assert (3, 10) <= v <= (3, 12)" >nul 2>&1
exit /b %errorlevel%

:find_python
if defined ATELIER_PYTHON (
    call :python_ok "%ATELIER_PYTHON%" && (set "PY="%ATELIER_PYTHON%"" & exit /b 0)
    call :fail "ATELIER_PYTHON=%ATELIER_PYTHON% is not a Python 3.10-3.12 with venv: point it at one, or unset it."
    exit /b 1
)
for %%V in (3.11 3.12 3.10) do (
    call :python_ok "py -%%V" && (set "PY=py -%%V" & exit /b 0)
)
call :python_ok python && (set "PY=python" & exit /b 0)
call :fail "no Python 3.10-3.12 found: install Python 3.11 from python.org (tick 'Add python.exe to PATH'), or set ATELIER_PYTHON=C:\path\to\python.exe."
exit /b 1

:stamped
if not exist "%STAMP%" exit /b 1
findstr /x /c:"%~1" "%STAMP%" >nul 2>&1
exit /b %errorlevel%

:stamp
set "KEY=%~1"
for /f "delims==" %%K in ("%KEY%") do set "KEY=%%K"
if exist "%STAMP%" (findstr /v /b /c:"%KEY%=" "%STAMP%" > "%STAMP%.new") else (type nul > "%STAMP%.new")
echo %~1>> "%STAMP%.new"
move /y "%STAMP%.new" "%STAMP%" >nul
exit /b 0

:pip_run
rem pip_run WHAT ARGS...: stops with one line on failure
set "WHAT=%~1"
shift
set "PIP_ARGS="
:pip_args
if "%~1"=="" goto pip_go
set PIP_ARGS=!PIP_ARGS! %1
shift
goto pip_args
:pip_go
"%VENV_PY%" -m pip !PIP_ARGS! >> "%LOG%" 2>&1
if not errorlevel 1 exit /b 0
findstr /c:"No space left on device" /c:"Errno 28" "%LOG%" >nul 2>&1 && (call :fail "installing !WHAT! ran out of disk space: free some space (a first install needs about 6 GB) and run the same command again." & exit /b 1)
call :fail "installing !WHAT! failed (log: .venv\atelier-install.log): check your internet connection and run the same command again."
exit /b 1

:install_torch
set "TORCH_FALLBACK="
if not defined ATELIER_TORCH_CUDA set "ATELIER_TORCH_CUDA=%TORCH_CUDA_DEFAULT%"
set "PAIR=torch==%TORCH_VERSION% torchvision==%TORCHVISION_VERSION%"
if defined TORCH_COMMAND (
    set "TORCH_NOTE=TORCH_COMMAND is set: %TORCH_COMMAND%"
    set "TORCH_CMD=%TORCH_COMMAND:python -m =%"
    set "TORCH_CMD=!TORCH_CMD:pip install=install!"
) else (
    nvidia-smi >nul 2>&1
    if not errorlevel 1 (
        set "TORCH_NOTE=detected NVIDIA GPU: installing torch %TORCH_VERSION% + torchvision %TORCHVISION_VERSION%, CUDA build !ATELIER_TORCH_CUDA!"
        set "TORCH_CMD=install !PAIR! --extra-index-url %TORCH_INDEX%/!ATELIER_TORCH_CUDA!"
    ) else (
        set "TORCH_NOTE=no GPU detected: installing torch %TORCH_VERSION% + torchvision %TORCHVISION_VERSION%, CPU build (images will be slow)"
        set "TORCH_CMD=install !PAIR! --index-url %TORCH_INDEX%/cpu --timeout 15 --retries 1"
        set "TORCH_FALLBACK=install !PAIR!"
    )
)
call :stamped "torch=!TORCH_CMD!" && exit /b 0
echo Atelier: !TORCH_NOTE!
if not defined TORCH_FALLBACK (
    call :pip_run torch !TORCH_CMD! || exit /b 1
) else (
    "%VENV_PY%" -m pip !TORCH_CMD! >> "%LOG%" 2>&1
    if errorlevel 1 (
        echo Atelier: PyTorch's CPU index cannot be reached: installing torch %TORCH_VERSION% + torchvision %TORCHVISION_VERSION% from the default index
        call :pip_run torch !TORCH_FALLBACK! || exit /b 1
    )
)
rem The distributions' versions, not torch.__version__: that carries a build tag (2.14.1+cu130) the registry's
rem wheel does not, and a constraint with it matches nothing.
for /f "delims=" %%T in ('"%VENV_PY%" -c "import importlib.metadata as m, torch; print(m.version(torch.__name__))" 2^>nul') do set "TORCH_INSTALLED=%%T"
if not defined TORCH_INSTALLED (call :fail "torch was installed but does not import (log: .venv\atelier-install.log): remove .venv and run again." & exit /b 1)
echo Atelier: torch !TORCH_INSTALLED! ready
rem Later installs must never swap this torch (or its torchvision) for another build.
echo torch==!TORCH_INSTALLED!> "%CONSTRAINTS%"
set "VISION_INSTALLED="
for /f "delims=" %%V in ('"%VENV_PY%" -c "import importlib.metadata as m, torchvision; print(m.version(torchvision.__name__))" 2^>nul') do set "VISION_INSTALLED=%%V"
if defined VISION_INSTALLED echo torchvision==!VISION_INSTALLED!>> "%CONSTRAINTS%"
call :stamp "torch=!TORCH_CMD!"
set "INSTALLED=1"
exit /b 0

:install_requirements
rem install_requirements KEY FILE
set "HASH="
for /f "delims=" %%H in ('"%VENV_PY%" -c "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest()[:16])" "%ROOT%\%~2"') do set "HASH=%%H"
call :stamped "%~1=!HASH!" && exit /b 0
echo Atelier: installing %~2
call :pip_run %~2 install -q -r "%ROOT%\%~2" -c "%CONSTRAINTS%" || exit /b 1
call :stamp "%~1=!HASH!"
set "INSTALLED=1"
exit /b 0

:check_upscalers
rem after an install: spandrel (upscaler models) imports only beside a torchvision matching torch
if not "%INSTALLED%"=="1" exit /b 0
"%VENV_PY%" -c "import spandrel" >> "%LOG%" 2>&1
if errorlevel 1 echo Atelier: WARNING: spandrel does not import ^(log: .venv\atelier-install.log^): ESRGAN-family upscaler models will not load. torch and torchvision must be a matching pair: remove .venv and run again, or set TORCH_COMMAND to install both.
exit /b 0

:install_xformers
rem optional, NVIDIA only, and only a prebuilt wheel that fits the installed torch
call :stamped "xformers=done" && exit /b 0
if not defined TORCH_COMMAND (
    nvidia-smi >nul 2>&1
    if not errorlevel 1 (
        "%VENV_PY%" -m pip install -q --only-binary :all: xformers -c "%CONSTRAINTS%" >> "%LOG%" 2>&1
        if errorlevel 1 (echo Atelier: no xformers wheel fits this torch: going on without it ^(it is optional^)) else (echo Atelier: xformers installed ^(use it with --xformers^))
    )
)
call :stamp "xformers=done"
exit /b 0
